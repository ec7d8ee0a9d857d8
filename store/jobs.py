"""Job state transitions. The job row is the truth: every transition is one conditional UPDATE whose WHERE clause
states the status it expects, so two workers, a redelivered message or two reapers can never both win. Each function
commits its own change; client-visible changes bump `Job.version` (the API's ETag)."""

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from squeezer.core.events import Event, EventLevel
from squeezer.store.artifacts import QuotaExceeded, quota_lock, stored_bytes
from squeezer.store.db import changed_rows
from squeezer.store.job_spec import json_size
from squeezer.store.models import Artifact, Job, JobEvent, JobResult, as_utc, utcnow
from squeezer.store.statuses import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus
from squeezer.store.webhooks import queue_progress_event, queue_status_event


def jsonable(value: Any) -> Any:
    """Event data as strict JSON: PostgreSQL refuses NaN/inf, and engine figures may be numpy scalars or tensors."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def create_job(
    session: Session,
    *,
    tenant: str,
    spec: dict,
    idempotency_key: str | None,
    request_hash: str | None,
    max_attempts: int,
    quota_bytes: int | None = None,
    request_id: str | None = None,
) -> tuple[Job, bool]:
    """Inserts a queued job, or returns the tenant's job already created with this idempotency key (created=False);
    the caller compares `request_hash` to refuse a reused key with another body. The spec's bytes count toward the
    tenant's storage: past `quota_bytes`, QuotaExceeded and nothing is inserted (checked under the quota lock, as
    uploads are: store.artifacts.store_artifact)."""
    if idempotency_key is not None:
        existing = find_job_by_key(session, tenant, idempotency_key)
        if existing is not None:
            return existing, False
    job = Job(
        tenant=tenant,
        spec=spec,
        spec_bytes=json_size(spec),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        max_attempts=max_attempts,
        dispatched_at=utcnow(),
        request_id=request_id,
    )
    try:
        with quota_lock(session, tenant, quota_bytes):
            if quota_bytes is not None and job.spec_bytes > (left := quota_bytes - stored_bytes(session, tenant)):
                raise QuotaExceeded(left)
            session.add(job)
            session.flush()
            queue_status_event(session, job.id, JobStatus.QUEUED)
            session.commit()
    except IntegrityError:
        # Two requests with one key raced; the other insert won.
        session.rollback()
        existing = find_job_by_key(session, tenant, idempotency_key) if idempotency_key is not None else None
        if existing is None:
            raise
        return existing, False
    return job, True


def find_job_by_key(session: Session, tenant: str, key: str) -> Job | None:
    """The tenant's job created with this Idempotency-Key."""
    return session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))


def find_job(session: Session, job_id: str, tenant: str) -> Job | None:
    """The job when it belongs to `tenant`: another tenant's id reads as unknown."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))


# find_job for polls, built once: a Core statement skips the ORM's per-query compilation lookup and identity-map
# bookkeeping, most of a poll's cost (bench/api_poll.py).
_POLL_JOB = select(Job.__table__).where(Job.id == bindparam("job_id"), Job.tenant == bindparam("tenant"))


def poll_job_row(engine: Engine, job_id: str, tenant: str) -> Row | None:
    """The job's row (its columns as attributes, named as on `Job`) when it belongs to `tenant`, in one round trip
    on an autocommit engine (store.db.make_engine; polls on PostgreSQL: store.job_reads)."""
    with engine.connect() as connection:
        return connection.execute(_POLL_JOB, {"job_id": job_id, "tenant": tenant}).first()


def checkpoint_of(session: Session, job_id: str) -> str | None:
    """The artifact id of the job's latest checkpoint, if it has one."""
    return session.scalar(select(Job.checkpoint_artifact_id).where(Job.id == job_id))


def count_unfinished_jobs(session: Session, tenant: str) -> int:
    return session.execute(
        select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.not_in(FINAL_STATUSES))
    ).scalar_one()


def count_queued_jobs(session: Session, tenant: str) -> int:
    return session.execute(
        select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status == JobStatus.QUEUED)
    ).scalar_one()


def list_tenant_jobs(session: Session, tenant: str, *, before: Job | None, limit: int, status: str | None) -> list[Job]:
    """Up to `limit` of the tenant's jobs, newest first, older than `before` (the previous page's last job)."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if before is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(before.created_at, before.id))
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def list_job_events(session: Session, job_id: str, *, after_id: int | None, limit: int) -> list[JobEvent]:
    """Up to `limit` of the job's events in the order they happened, those after event `after_id`."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        query = query.where(JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def delete_final_job(session: Session, job_id: str, tenant: str) -> list[str] | None:
    """Deletes the tenant's job if it is final, with its events and result links, in one transaction. Returns the ids
    of the artifacts it leaves unreferenced (its results, a checkpoint not yet removed) for the caller to delete;
    should the caller die first, sweep_orphaned_results finds them. None when the tenant has no final job `job_id`."""
    job = session.scalar(
        select(Job).where(Job.id == job_id, Job.tenant == tenant, Job.status.in_(FINAL_STATUSES)).with_for_update()
    )
    if job is None:
        session.rollback()
        return None
    artifact_ids = list(session.scalars(select(JobResult.artifact_id).where(JobResult.job_id == job_id)))
    if job.checkpoint_artifact_id is not None:
        artifact_ids.append(job.checkpoint_artifact_id)
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(delete(JobResult).where(JobResult.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.commit()
    return artifact_ids


def list_job_results(session: Session, job_id: str) -> list[tuple[str, Artifact]]:
    """The job's named results (name, artifact), by name."""
    rows = session.execute(
        select(JobResult.name, Artifact)
        .join(Artifact, Artifact.id == JobResult.artifact_id)
        .where(JobResult.job_id == job_id)
        .order_by(JobResult.name)
    )
    return [(name, artifact) for name, artifact in rows]


def find_job_result(session: Session, job_id: str, name: str) -> Artifact | None:
    """The artifact of the job's result `name` (model.sqz, report.json, ...)."""
    return session.scalar(
        select(Artifact)
        .join(JobResult, JobResult.artifact_id == Artifact.id)
        .where(JobResult.job_id == job_id, JobResult.name == name)
    )


def _fresh(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))


def claim_job(session: Session, job_id: str, worker_id: str) -> Job | None:
    """queued → running, counting the attempt. None when the job is gone, final, or another worker has it."""
    now = utcnow()
    claimed = changed_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            finished_at=None,
            version=Job.version + 1,
        ),
    )
    if claimed != 1:
        session.rollback()
        return None
    queue_status_event(session, job_id, JobStatus.RUNNING)
    session.commit()
    return _fresh(session, job_id)


def heartbeat(session: Session, job_id: str, worker_id: str) -> bool:
    """Marks the job alive. False when the job is no longer ours or a cancel was requested: the worker should stop.
    Does not bump `version` (nothing a client sees changes)."""
    ours = changed_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
        .values(heartbeat_at=utcnow()),
    )
    session.commit()
    if ours != 1:
        return False
    return not session.scalar(select(Job.cancel_requested).where(Job.id == job_id))


def add_event(session: Session, job_id: str, event: Event) -> None:
    """Adds one event row to the session's transaction, so a caller can commit it with the change it reports."""
    session.execute(
        insert(JobEvent).values(
            job_id=job_id,
            level=event.level,
            stage=event.stage,
            message=event.message,
            data=jsonable(event.data),
            created_at=utcnow(),
        )
    )


def record_event(session: Session, job_id: str, event: Event) -> None:
    add_event(session, job_id, event)
    session.commit()


def update_progress(session: Session, job_id: str, progress: dict) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES))
        .values(progress=jsonable(progress), version=Job.version + 1)
    )
    queue_progress_event(session, job_id)
    session.commit()


def set_checkpoint(session: Session, job_id: str, worker_id: str, artifact_id: str) -> str | None:
    """Points the job at its newest checkpoint. Returns the previous checkpoint's id (for the caller to delete),
    or `artifact_id` itself when the job is no longer ours (so the caller deletes the orphan)."""
    previous = checkpoint_of(session, job_id)
    ours = changed_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
        .values(checkpoint_artifact_id=artifact_id),
    )
    session.commit()
    return previous if ours == 1 else artifact_id


def _ended(status: JobStatus, now: datetime, **values: Any) -> dict[str, Any]:
    """The columns every move to a final status sets: when it ended, and no checkpoint (a checkpoint only serves a
    next attempt, and a final job has none; its artifact is deleted by the worker or swept)."""
    return {"status": status, "finished_at": now, "checkpoint_artifact_id": None, **values}


def finish_job(
    session: Session,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    target_met: bool | None = None,
    results: dict[str, str] | None = None,
) -> bool:
    """running/cancelling → a final status, with the job's named results (name → artifact id) attached in the same
    transaction, so a job never shows results without being succeeded, nor two sets of them, and its checkpoint
    pointer cleared with it (_ended; the caller deletes the artifact, sweep_orphaned_results if the caller dies
    first). False (nothing changed) when the job is no longer this worker's."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status}")
    started_at = as_utc(session.scalar(select(Job.started_at).where(Job.id == job_id)))
    now = utcnow()
    values = _ended(
        status,
        now,
        error_code=error_code,
        error_message=error_message,
        target_met=target_met,
        version=Job.version + 1,
    )
    if started_at is not None:
        values["duration_s"] = (now - started_at).total_seconds()
    ours = changed_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
        .values(**values),
    )
    if ours != 1:
        session.rollback()
        return False
    if results:
        session.execute(delete(JobResult).where(JobResult.job_id == job_id))
        session.execute(
            insert(JobResult),
            [{"job_id": job_id, "name": name, "artifact_id": artifact_id} for name, artifact_id in results.items()],
        )
    queue_status_event(session, job_id, status)
    session.commit()
    return True


def request_cancel(session: Session, job_id: str) -> Job | None:
    """Idempotent: queued → cancelled at once (it will never run); running → cancelling (the worker stops at its next
    step boundary); final and cancelling jobs are left as they are. None when the job does not exist."""
    now = utcnow()
    cancelled = changed_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(**_ended(JobStatus.CANCELLED, now, cancel_requested=True, version=Job.version + 1)),
    )
    if cancelled == 1:
        queue_status_event(session, job_id, JobStatus.CANCELLED)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.CANCELLING, cancel_requested=True, version=Job.version + 1)
    )
    session.commit()
    return _fresh(session, job_id)


def reap(session: Session, *, heartbeat_timeout_s: float, stale_queued_s: float) -> list[str]:
    """Recovers jobs whose worker died and jobs whose message was lost. Returns the ids to (re)dispatch.

    - running with a heartbeat older than `heartbeat_timeout_s` → queued again while attempts remain, else failed
      with `worker_lost`; cancelling ones → cancelled.
    - queued and not dispatched for `stale_queued_s` (broker lost the message, e.g. Redis restarted) → sent again.
    Every change is conditional on the state just read, so concurrent reapers in several workers act once per job."""
    now = utcnow()
    requeued = _reap_dead_workers(session, now, now - timedelta(seconds=heartbeat_timeout_s))
    return requeued + _redispatch_stale(session, now, now - timedelta(seconds=stale_queued_s))


def _reap_dead_workers(session: Session, now: datetime, dead_cutoff: datetime) -> list[str]:
    """Moves every active job whose heartbeat is older than `dead_cutoff` on (_after_lost_worker), each in its own
    transaction with its event; returns the ids queued again."""
    silent = or_(Job.heartbeat_at < dead_cutoff, Job.heartbeat_at.is_(None))
    dead = session.execute(
        select(Job.id, Job.status, Job.attempts, Job.max_attempts).where(Job.status.in_(ACTIVE_STATUSES), silent)
    ).all()
    requeued: list[str] = []
    for job_id, status, attempts, max_attempts in dead:
        values, event = _after_lost_worker(status, attempts, max_attempts, now)
        still_dead = (Job.id == job_id, Job.status == status, Job.attempts == attempts, silent)
        if changed_rows(session, update(Job).where(*still_dead).values(**values, version=Job.version + 1)) == 1:
            add_event(session, job_id, event)
            queue_status_event(session, job_id, values["status"])
            if values["status"] == JobStatus.QUEUED:
                requeued.append(job_id)
        session.commit()
    return requeued


def _after_lost_worker(status: str, attempts: int, max_attempts: int, now: datetime) -> tuple[dict, Event]:
    """The columns and the event of a job whose worker stopped responding: a cancelling job ends cancelled, one
    with attempts left is queued again, the others fail with `worker_lost`."""
    level: EventLevel = "warning"
    if status == JobStatus.CANCELLING:
        message = "The worker stopped responding; the job was being cancelled and is now cancelled."
        values = _ended(JobStatus.CANCELLED, now)
    elif attempts < max_attempts:
        message = f"The worker stopped responding during attempt {attempts}; the job was requeued."
        values = {"status": JobStatus.QUEUED, "worker_id": None, "heartbeat_at": None, "dispatched_at": now}
    else:
        level, message = "error", f"The worker stopped responding on each of {attempts} attempts; giving up."
        values = _ended(JobStatus.FAILED, now, error_code="worker_lost", error_message=message)
    event = Event(stage="worker_lost", fraction=0.0, level=level, message=message, data={"attempts": attempts})
    return values, event


def _redispatch_stale(session: Session, now: datetime, stale_cutoff: datetime) -> list[str]:
    """The queued jobs not dispatched since `stale_cutoff`, each marked dispatched now by one conditional UPDATE."""
    unsent = (Job.status == JobStatus.QUEUED, or_(Job.dispatched_at < stale_cutoff, Job.dispatched_at.is_(None)))
    redispatched: list[str] = []
    for job_id in session.scalars(select(Job.id).where(*unsent)).all():
        marked = changed_rows(session, update(Job).where(Job.id == job_id, *unsent).values(dispatched_at=now))
        session.commit()
        if marked == 1:
            redispatched.append(job_id)
    return redispatched
