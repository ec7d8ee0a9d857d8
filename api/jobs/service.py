"""Job submission: reference checks, input validation with the engine's own checks, idempotent insert, dispatch."""

import hashlib
import json
import tempfile
from pathlib import Path

import anyio.to_thread
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ProblemError, not_found
from api.jobs.schemas import JobCreate, JobOut
from core.errors import InputError
from store.artifacts import get_ready_artifact
from store.blobs import BlobStore
from store.jobs import FINAL_STATUSES, as_utc, create_job
from store.models import Job, JobEvent
from store.settings import Settings


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def referenced_artifact_ids(body: JobCreate) -> list[str]:
    model = body.model
    ids = [
        getattr(model, "artifact_id", None)
        or getattr(model, "weights_artifact_id", None)
    ]
    ids.append(getattr(body.dataset, "artifact_id", None))
    return [artifact_id for artifact_id in ids if artifact_id]


def check_references(session: Session, body: JobCreate, tenant: str) -> None:
    for artifact_id in referenced_artifact_ids(body):
        if get_ready_artifact(session, artifact_id, tenant) is None:
            raise ProblemError(
                422,
                "artifact_not_found",
                f"artifact {artifact_id} does not exist (upload it with POST /v1/artifacts first)",
            )


def check_job_quota(session: Session, tenant: str, limit: int | None) -> None:
    """429 when the tenant already has `limit` unfinished jobs. Checked before the (slow) input validation; two
    submissions racing at the limit may both pass, which a quota tolerates."""
    if limit is None:
        return
    unfinished = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant == tenant, Job.status.not_in(FINAL_STATUSES))
    )
    if unfinished >= limit:
        raise ProblemError(
            429,
            "job_quota_exceeded",
            f"this tenant already has {unfinished} unfinished jobs (limit {limit}); wait for one to finish or cancel one",
        )


def validate_inputs(
    body: JobCreate,
    spec: dict,
    tenant: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """Fetches the inputs the way a worker will and runs the engine's input checks on them (blocking: threadpool)."""
    from core.pipeline import (
        check_inputs,  # the engine (torch) loads only when a job is submitted
    )
    from worker.context import WorkerContext
    from worker.runner import fetch_dataset, fetch_model

    context = WorkerContext(
        settings=settings,
        session_factory=session_factory,
        blobs=blobs,
        worker_id="api-validation",
        device="cpu",
    )
    draft = Job(spec=spec, tenant=tenant)
    with tempfile.TemporaryDirectory(prefix="squeezer-check-") as workdir:
        inputs = Path(workdir)
        check_inputs(
            fetch_model(draft, context, inputs),
            fetch_dataset(draft, context, inputs),
            body.compress_config(),
        )


async def submit_job(
    body: JobCreate,
    *,
    idempotency_key: str | None,
    tenant: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
) -> tuple[Job, bool]:
    """Returns (job, created). Raises 422 problems for unknown artifacts, unusable inputs and a reused key."""
    digest = request_hash(body)
    spec = body.model_dump(mode="json")
    with session_factory() as session:
        if idempotency_key is not None:
            existing = session.scalar(
                select(Job).where(
                    Job.tenant == tenant, Job.idempotency_key == idempotency_key
                )
            )
            if existing is not None:
                return _same_request(existing, digest), False
        check_references(session, body, tenant)
        check_job_quota(session, tenant, settings.max_concurrent_jobs_per_tenant)
    try:
        await anyio.to_thread.run_sync(
            validate_inputs, body, spec, tenant, settings, session_factory, blobs
        )
    except InputError as error:
        raise ProblemError(
            422, error.code, error.message, title="Unusable input"
        ) from None
    with session_factory() as session:
        job, created = create_job(
            session,
            tenant=tenant,
            spec=spec,
            idempotency_key=idempotency_key,
            request_hash=digest,
            max_attempts=settings.max_attempts,
        )
    return (job, True) if created else (_same_request(job, digest), False)


def _same_request(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )
    return job


def get_job(session: Session, job_id: str, tenant: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))
    if job is None:
        raise not_found("job", job_id)
    return job


def list_jobs(
    session: Session, tenant: str, *, after: str | None, limit: int, status: str | None
) -> list[Job]:
    """Newest first; the cursor is the last job id of the previous page."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if after:
        cursor = get_job(session, after, tenant)
        query = query.where(
            tuple_(Job.created_at, Job.id) < tuple_(cursor.created_at, cursor.id)
        )
    return list(
        session.scalars(
            query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        )
    )


def list_events(
    session: Session, job_id: str, *, after: str | None, limit: int
) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        if not after.isdigit():
            raise ProblemError(
                422, "validation_error", "after must be an event id (an integer)"
            )
        query = query.where(JobEvent.id > int(after))
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)))


def etag(job: Job) -> str:
    return f'"{job.id}-{job.version}"'


def job_out(job: Job) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    error = (
        {"code": job.error_code, "message": job.error_message}
        if job.error_code
        else None
    )
    return JobOut(
        id=job.id,
        status=job.status,
        progress=job.progress or {},
        spec=job.spec,
        attempts=job.attempts,
        target_met=job.target_met,
        error=error,
        created_at=as_utc(job.created_at),
        started_at=as_utc(job.started_at),
        finished_at=as_utc(job.finished_at),
        duration_s=job.duration_s,
        links={
            "self": base,
            "events": f"{base}/events",
            "report": f"{base}/report",
            "artifacts": f"{base}/artifacts",
            "cancel": f"{base}/cancel",
        },
    )
